"""A custom SMS channel for Dynamics 365, served as an Azure Functions app."""
