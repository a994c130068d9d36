"""What faces department systems and operators: publishing with verdicts, the HTTP gateway,
and the views of status and of one case."""
