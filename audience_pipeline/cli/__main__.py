"""`python -m audience_pipeline.cli`: the `audience-pipeline` command without its console script."""

from audience_pipeline.cli import main

main()
