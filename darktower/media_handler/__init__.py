"""media_handler."""
