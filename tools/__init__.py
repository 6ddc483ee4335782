"""Tools for the people who run the channel; never deployed with the Function App."""
