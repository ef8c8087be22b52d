"""The implementation of `trioflow.testing`; import the public names from there."""
