"""A blind benchmark of `dnattrace diagnose`: faults built from public user reports by someone who does not
write the diagnosis code, judged against ground truth measured independently (README.md here)."""
