"""Amazon Marketing Cloud advertiser datasets: definitions and query-schema compatibility."""
