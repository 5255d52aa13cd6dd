"""The project's own date formats (FORMAT_MODULE_PATH): how staff pages write a moment by default."""
