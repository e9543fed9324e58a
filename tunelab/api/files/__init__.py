"""`/v1/files`: upload, list, retrieve, download, check and delete training files."""
