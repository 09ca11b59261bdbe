"""meeting_controller."""
