"""Simulator for the aggregator protocol (being written)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
