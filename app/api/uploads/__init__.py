"""OpenAI's Uploads API: large files sent in parts, assembled into a file on completion."""
