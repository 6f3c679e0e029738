"""The application shell: the command line, the embedded server, the supervisor, replay and the operator's views."""
