"""`/v1/deployments`: named endpoints for models, in Azure's shape."""
