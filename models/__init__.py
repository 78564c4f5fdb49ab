from models.build import ParamReport, build_model, param_report
from models.resnet import ModelConfigError, ResNet

__all__ = ["ParamReport", "ModelConfigError", "ResNet", "build_model", "param_report"]
