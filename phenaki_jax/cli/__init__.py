"""The console scripts, one module each: flags in, one library call, one-line errors out.

Each imports the library inside its `main`, not at module level: `common.run` first
re-executes the process with glibc's huge pages (see `common.huge_pages_env`), which must
happen before JAX or TensorFlow is loaded.
"""
