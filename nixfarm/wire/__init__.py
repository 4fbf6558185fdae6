"""Wire models: what the JSON API and the runner protocol send, shared by the server, the
CLI and the runner. One module per protocol; each model says its route and scope."""
