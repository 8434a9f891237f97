"""AWS-shaped events and responses (SQS, API Gateway v2, ALB, destinations)."""
