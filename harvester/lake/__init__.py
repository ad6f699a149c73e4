"""The lake: harvested raw NDJSON -> partitioned Parquet, a time index of files, and a fan-out query engine.

Plain domain code; Lambda handlers call these functions with ``S3Store(boto3.client("s3"), bucket)`` and
``FileIndex(boto3.client("dynamodb"), table)``. See README.md in this folder.
"""
