"""semclip."""
