"""`/v1/uploads`: a file too large for one request, sent in parts and assembled on complete (OpenAI's Uploads API)."""
