#!/bin/sh
# Each Amazon API's concurrency pool limit, kept in the instance's database: run once with the
# deployment's DAGSTER_HOME and environment after the first start, and again after changing a figure.
# These are starting points, not Amazon's limits (docs/production.md, "Concurrency pools").
set -eu
dagster instance concurrency set firehose "${POOL_FIREHOSE:-4}"
dagster instance concurrency set amazon_ads_api "${POOL_AMAZON_ADS_API:-2}"
dagster instance concurrency set amazon_ads_dsp "${POOL_AMAZON_ADS_DSP:-2}"
dagster instance concurrency set amazon_ads_amc "${POOL_AMAZON_ADS_AMC:-4}"
