"""The ftvm log: record format (records.py, pure), log files (logfile.py), and later the
channel that streams the same records from primary to backup."""
