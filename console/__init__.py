"""The Textual console (`pipectl` with no verb). The only package that imports textual."""
