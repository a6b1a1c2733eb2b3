"""Activate first-party audiences into Amazon Marketing Cloud, Ads Data Manager, DSP and Firehose."""
