"""What every run of cass-pretrain, cass-finetune and cass-predict shares: its folder (claimed
with a lock: :mod:`.runfolder`), its console, log and stop signals (:mod:`.console`), its config
and summary (:mod:`.common`), launch and speed settings (:mod:`.speed`), resume
(:mod:`.resume`, :mod:`.resume_checks`, :mod:`.overrides`, :mod:`.runinfo`) and loggers."""
