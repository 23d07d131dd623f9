import click
@click.group()
def cli():
    """greenmaas"""
