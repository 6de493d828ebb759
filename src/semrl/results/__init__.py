"""metrics.json and the report: build the numbers, render markdown, HTML and plots."""
