"""`/v1/content_filters`: content filter policies for deployments."""
