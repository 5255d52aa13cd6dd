from django.urls import path

from reporting import views

app_name = "reporting"
urlpatterns = [
    path("dashboard/", views.dashboard_index, name="dashboard-index"),
    path("dashboards/<slug:slug>/", views.dashboard_page, name="dashboard"),
    path("dashboards/<slug:slug>/data.json", views.dashboard_json, name="dashboard-data"),
    path("datasets/<slug:slug>/query.json", views.dataset_query_json, name="dataset-query"),
    path("datasets/<slug:slug>/export.<str:file_format>", views.dataset_export, name="dataset-export"),
]
