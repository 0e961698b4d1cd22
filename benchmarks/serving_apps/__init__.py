"""The servers ``benchmarks.serving`` compares ours against, each run in a process of its own:
``article`` (the seed article's FastAPI app as written) and ``lit`` (LitServe, same model)."""
