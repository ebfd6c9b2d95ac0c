"""The HTTP layer: the Starlette app, its one route table, input parsing, URL fetching, the page and the access log."""
