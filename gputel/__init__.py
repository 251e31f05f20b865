"""gputel: developer entry points that run the pipeline's components together (`gputel-up`)."""
