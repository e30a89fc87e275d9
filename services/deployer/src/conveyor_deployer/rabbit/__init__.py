"""RabbitMQ clusters per environment: desired state, plan and apply, cluster control, monitoring."""
