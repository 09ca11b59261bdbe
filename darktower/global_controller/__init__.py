"""global_controller."""
