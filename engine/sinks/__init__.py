"""Where results go: MP4, JSON lines, a window, an image folder."""
