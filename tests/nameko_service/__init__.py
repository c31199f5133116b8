"""A real nameko service that listens to the events the test project publishes."""
