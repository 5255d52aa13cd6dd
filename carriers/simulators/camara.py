"""Simulator for the camara protocol (being written)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
