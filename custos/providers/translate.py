"""OpenAI chat <-> Anthropic Messages translation (requests, responses, streams). In progress."""
