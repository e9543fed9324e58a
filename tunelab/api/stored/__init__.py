"""Stored chat completions (`store: true`): list, retrieve, messages, update, delete as the SDK's
`client.chat.completions` calls them, and tunelab's export of them as a training file."""
