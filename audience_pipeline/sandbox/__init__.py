"""The sandbox: a faithful local stand-in for the Amazon Ads API and AWS (S3, Firehose), on loopback."""
