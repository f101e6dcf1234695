"""The model side of oi: the ``openai`` boundary (client), code extraction and prompts."""
