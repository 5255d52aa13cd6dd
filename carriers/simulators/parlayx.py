"""Simulator for the parlayx protocol (being written)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
