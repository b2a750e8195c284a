"""The story editor behind `phenaki-serve`: a web page, its API and the job queue."""
