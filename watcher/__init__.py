"""The folder watcher on the acquisition machine: detects complete scans and
starts one flow run per view, exactly once, through restarts."""
