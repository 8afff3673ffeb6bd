"""Input/output: the prediction Parquet schema, model packaging and storage."""
