"""`captioner caption`: caption files or a folder, in process or through a server."""
