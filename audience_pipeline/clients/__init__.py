"""Clients of Amazon's APIs and AWS, free of Dagster: the Amazon Ads API and Kinesis Data Firehose."""
