"""Online serving in the supervisor: deployments and their replica processes
(``supervisor.serving.manager``), their commands, state and model sources."""
