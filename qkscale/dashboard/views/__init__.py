"""The dashboard's views: each a Panel viewer over the shared data and one session's state."""
