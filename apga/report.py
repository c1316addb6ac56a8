"""`python -m apga.report RUNS_DIR`: print the summary tables of RUNS_DIR/results.csv and write them,
with the plots, beside it (apga/reporting/)."""
from apga.reporting.summary import main

if __name__ == "__main__":
    import fire

    fire.Fire(main)
