"""What a user would pick instead of Sluice, set up the way its documentation suggests."""
