"""Tests of how values are stored: serializers and artifacts."""
