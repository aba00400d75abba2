"""Small real worlds that need no download, with exact answers to test against."""
