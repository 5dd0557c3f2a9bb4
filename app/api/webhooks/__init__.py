"""Webhook endpoints: `/v1/webhook_endpoints`, as the openai SDK's `client.webhooks` calls them."""
